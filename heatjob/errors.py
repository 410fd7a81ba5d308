"""User-facing errors: the CLI prints their message on one line and exits with code 2."""


class HeatjobError(Exception):
    """A problem the user can fix (bad spec, unreadable input, unsupported model).

    The message must name the key, file, module or value at fault.
    """


class SpecError(HeatjobError):
    """The job spec is invalid."""


class DataError(HeatjobError):
    """A data set file or folder cannot be read."""


class UnsupportedModelError(HeatjobError):
    """The LRP engine cannot explain a layer of this model."""
