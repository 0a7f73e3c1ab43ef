"""`retrain_schedule`: nightly retraining of every adapter (stopped until a user turns it on)."""

from dagster import DefaultScheduleStatus, RunRequest, ScheduleEvaluationContext, schedule

from ruv_assets.orchestration.jobs import train_job
from ruv_assets.catalogue.catalogue import current_catalogue


@schedule(
    job=train_job,
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.STOPPED,
    description="02:00 UTC nightly: retrain every adapter from its last version (EWC++); the sensor promotes what passes.",
)
def retrain_schedule(context: ScheduleEvaluationContext):
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    for name in current_catalogue().adapter_names:
        yield RunRequest(run_key=f"retrain-{day}-{name}", partition_key=name)
