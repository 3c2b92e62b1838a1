"""Running a repo every day: the task graph of the compiled plan, partition sensors, the daily runner
with its history, the Airflow export and the stream supervisor (SPEC §7)."""
