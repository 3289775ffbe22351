"""Without TensorFlow, the TF classes fail with an error naming the extra (runs without TensorFlow)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_missing_tensorflow_names_the_extra() -> None:
    # a fresh interpreter in which `import tensorflow` / `import keras` fail, as when not installed
    script = textwrap.dedent("""
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("tensorflow", "keras"):
                    raise ImportError(f"No module named {name!r}")
                return None

        sys.meta_path.insert(0, Block())
        import lamina
        from lamina.errors import UnsupportedError
        try:
            lamina.TFMobileBertForSequenceClassification
        except UnsupportedError as error:
            print("UnsupportedError:", error)
        assert lamina.MobileBertModel.__name__ == "MobileBertModel"
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "UnsupportedError:" in result.stdout
    assert "pip install 'lamina[tf]'" in result.stdout
