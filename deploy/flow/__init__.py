"""The deploy flow: gather -> plan -> execute over one or more hosts, whatever the runtime; and status."""
