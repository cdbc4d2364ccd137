"""`python -m vitstudy.claims`: print docs/claims.md (the guide and the generated list of claims)."""

from .listing import markdown

print(markdown(), end="")
