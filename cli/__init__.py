"""idweave.cli."""
