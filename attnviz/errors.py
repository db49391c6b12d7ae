"""The one exception type for bad input: its message is shown to the user as it is."""


class AttnvizError(ValueError):
    """A problem with what the user gave (a model name, a file, a text), explained in one line.

    The command line prints it and exits 1; the app shows it with ``st.error``. Anything else
    that escapes is a bug.
    """
