"""Errors a user can act on. Their message is shown as it is, in the UI and on the command line."""


class UserError(Exception):
    """Bad input or a request that cannot be met; the message names the file or field and what is allowed."""


class ValidationError(UserError, ValueError):
    """A hyperparameter or configuration value outside what the template allows."""


class NotQuick(Exception):
    """A call made with ``quick=True`` met work that reads files or may wait on the store's write lock (loading an
    index, writing a key's "last used"): the caller makes it again without ``quick``, off its event loop."""
