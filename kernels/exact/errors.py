"""The one error type of the exact solver: bad input a user can cause, named by module and reason."""


class ExactSolveError(ValueError):
    """Bad input to the exact solver; the message is one line: `<module>: <reason>`.

    `ExactSolveError(module, reason)`; a single argument is taken as the whole message.
    """

    def __init__(self, module: str, reason: str | None = None):
        self.module = module if reason is not None else None
        self.reason = reason if reason is not None else module
        super().__init__(f"{module}: {reason}" if reason is not None else str(module))
