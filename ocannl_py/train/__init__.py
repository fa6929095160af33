"""Training: gradients by reverse-mode autodiff (`autodiff`), optimizers written in the cd DSL
(`optimizers`), the loop over batches (`fit`), and data-parallel steps over several GPUs
(`data_parallel`)."""

from ocannl_py.train.autodiff import grad_update
from ocannl_py.train.data_parallel import DataParallel, data_parallel
from ocannl_py.train.fit import fit
from ocannl_py.train.optimizers import adam_update, sgd_update

__all__ = ["DataParallel", "adam_update", "data_parallel", "fit", "grad_update", "sgd_update"]
