"""The small shared package every Bitware Mesh server builds on: config, errors, auth, database,
logging, channels and the server bootstrap."""
