"""The error every user-fixable data problem raises: it names the row and says what to do."""

from __future__ import annotations

# Appended to messages about one bad row: the two ways out.
SKIP_HINT = "fix or remove the row, or set on_bad_line='skip' to skip and count such rows"


class DataError(ValueError):
    """A bad data row or image. ``source`` is where (``file:line`` or ``dir[row i]``), ``reason``
    a short machine-readable kind, counted per kind when rows are skipped: ``invalid_utf8``,
    ``nul_byte``, ``line_too_long``, ``invalid_json``, ``missing_field``, ``bad_field``,
    ``bad_message``, ``bad_content``, ``missing_image``, ``corrupt_image``, ``bad_image``,
    ``image_too_large``, ``no_image_processor``, ``template``, ``image_changed``."""

    def __init__(self, source: str, reason: str, detail: str, hint: str = SKIP_HINT):
        self.source, self.reason, self.detail, self.hint = source, reason, detail, hint
        super().__init__(f"{source}: {detail}; {hint}" if hint else f"{source}: {detail}")

    def __reduce__(self):  # picklable across processes (Ray workers, data loader workers)
        return (DataError, (self.source, self.reason, self.detail, self.hint))
