"""Research code kept for the pages it produced: not part of the supported API, and free to change."""
