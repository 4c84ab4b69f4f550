"""Deep Training Studio core: everything but the UI.

Pages and the CLI call into this package; it never imports Streamlit except in ``core.ui``.
"""

__version__ = "0.1.0"
