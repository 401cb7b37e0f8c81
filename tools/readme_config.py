"Regenerate the README's config reference from longcat_nb.config: `python tools/readme_config.py`."
import re
from pathlib import Path
from longcat_nb.config import config_reference

p = Path(__file__).parents[1] / "README.md"
text = p.read_text()
new = re.sub(r"(<!-- config-reference:start -->\n).*(\n<!-- config-reference:end -->)",
             lambda m: m[1] + config_reference() + m[2], text, flags=re.S)
p.write_text(new)
print("README config reference", "updated" if new != text else "already current")
