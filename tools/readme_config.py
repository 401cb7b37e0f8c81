"""Regenerate the README's config reference from longcat_nb.config: `python tools/readme_config.py`.

The README is rendered from nbs/index.ipynb, whose config reference is a cell output: this runs the notebook again and
renders the README (`python tools/docs.py execute` then `python tools/docs.py readme`)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from docs import execute, render_readme, ROOT

execute()
render_readme(ROOT)
print("README config reference regenerated (nbs/index.ipynb executed, README.md rendered)")
