"""What a process that only serves imports: training-only libraries load when a job needs them.

scikit-learn is about 44 MiB of resident memory (bench/README.md, "Issue 15, third round"),
and a serving process with 64 adapters is measured against 64 model copies on RSS.
"""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_app_does_not_load_scikit_learn() -> None:
    code = "import sys, app.main; print(sorted(m for m in sys.modules if m.startswith('sklearn')))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert result.stdout.strip() == "[]", result.stdout[:500]
