"""The op DSL (OCANNL's %op) and the cd DSL (%cd), in strings: `syntax` parses both, `op` and
`cd` give the trees their meaning (tensors, assignment code). Import from the modules (or from
`ocannl_py`): this package imports nothing, so `operation` can use `dsl.cd` while `dsl.op` uses
`operation`."""
