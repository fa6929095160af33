"""Training: gradients by reverse-mode autodiff (`autodiff`), optimizers written in the cd DSL
(`optimizers`), and the loop over batches (`fit`)."""

from ocannl_py.train.autodiff import grad_update
from ocannl_py.train.fit import fit
from ocannl_py.train.optimizers import adam_update, sgd_update

__all__ = ["adam_update", "fit", "grad_update", "sgd_update"]
