import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_quote_code():
    spec = importlib.util.spec_from_file_location("quote_code", ROOT / "docs" / "quote_code.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_posts_quoted_code_is_the_projects_current_code():
    quote_code = load_quote_code()
    post = quote_code.POST.read_text()
    assert "<!-- quote:" in post
    assert quote_code.render(post) == post, "run: python docs/quote_code.py"


def test_a_quote_of_a_missing_name_is_an_error():
    quote_code = load_quote_code()
    with pytest.raises(LookupError, match="NoSuchClass"):
        quote_code.source_of("modeling_vanilla.py", "NoSuchClass")
