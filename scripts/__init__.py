"""Command-line tools: checkpoint building and conversion (`python -m scripts.<tool>`)."""
