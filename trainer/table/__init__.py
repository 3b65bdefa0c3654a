"""The SIT result table: the run graph (plan), running or submitting it (execute), and the table (results)."""
