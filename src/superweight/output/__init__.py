"""What a command writes: tables (``report``), pictures (``plot``), and files that land
whole or not at all (``atomic`` for one path, ``outputs`` for a command's set)."""
