"""Device kernels: pure tensor functions. No side effects at import (see DESIGN.md)."""
