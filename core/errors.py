"""Errors a user can act on. Their message is shown as it is, in the UI and on the command line."""


class UserError(Exception):
    """Bad input or a request that cannot be met; the message names the file or field and what is allowed."""


class ValidationError(UserError, ValueError):
    """A hyperparameter or configuration value outside what the template allows."""
