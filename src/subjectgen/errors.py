"""The one error type a user sees: a single line that names the thing and says what to do."""


class UserError(Exception):
    """Something the user can fix (a path, an image, a flag). The CLI prints it in one line and exits 2."""


class TrainingDiverged(UserError):
    """The loss became NaN/inf; the last good checkpoint is kept."""
