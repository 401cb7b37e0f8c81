"The README's config reference is generated from the config chapter; keep them identical."
import re
from pathlib import Path
from longcat_nb.config import config_reference


def test_readme_config_reference_in_sync():
    text = (Path(__file__).parents[1] / "README.md").read_text()
    m = re.search(r"<!-- config-reference:start -->\n(.*)\n<!-- config-reference:end -->", text, re.S)
    assert m, "README lacks the config-reference markers"
    assert m[1] == config_reference(), "README config reference is stale: regenerate it from longcat_nb.config.config_reference()"
