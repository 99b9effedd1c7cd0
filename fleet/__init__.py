"""A city's fleet on a clustered broker: the RabbitMQ cluster script and the load generator."""
