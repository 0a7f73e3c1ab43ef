"""The one error type of the exact solver: bad input a user can cause, named by module and reason."""


class ExactSolveError(ValueError):
    """Bad input to the exact solver; the message is one line: `<module>: <reason>`."""

    def __init__(self, module: str, reason: str):
        self.module = module
        self.reason = reason
        super().__init__(f"{module}: {reason}")
