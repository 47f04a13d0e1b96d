"""Markdown for reports that end up in pull-request comments and CI summaries."""


def cell(text: str) -> str:
    """Text for a markdown table cell: a `|` would end the cell, a line break the row."""
    return " ".join(text.replace("|", "\\|").splitlines())
