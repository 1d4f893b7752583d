"""What the widget producer, consumer and maker share: SQS setup, message formats, the widget store."""
