"""Loop IR passes, each `Stmt -> Stmt` in a file of its own; `arrayjit.lowering` runs them."""
