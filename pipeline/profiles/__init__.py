"""Photo profiles (scripts/reproduce-profile): their params and their collected report."""
