"""The local backend's cluster: a supervisor process and the state directory that finds it again."""
