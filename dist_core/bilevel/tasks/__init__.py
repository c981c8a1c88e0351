"""Built-in bilevel tasks that job files can name (``bilevel.task``)."""
