"""Safe files: the one owner of how muzo_ops reads and writes a file (lock, atomic write, backups)."""
