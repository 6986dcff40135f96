"""The local backend's cluster: a supervisor process and the registry that finds it again."""
