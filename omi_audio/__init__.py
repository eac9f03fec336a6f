"""omi-audio: the tools that read back what the function stored (export, status).

The function itself is the Python files at the repository's root; these tools
import its storage and naming modules, never the reverse.
"""

import warnings

# google-api-core warns on import, once a Python version passes its end of support,
# that it will get no more updates: a paragraph on every run of a tool, about the
# library rather than the archive.  The function runs on its own, supported Python.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"google\.api_core\.")
