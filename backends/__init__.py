"""Device backends. No side effects at import (see DESIGN.md)."""
