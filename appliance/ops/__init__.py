"""Operations: disk monitoring and quotas, backups, reindex, status and metrics."""
