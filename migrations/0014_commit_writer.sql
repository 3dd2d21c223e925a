-- Which run of the job made the last commit (the run id of its lease). A writer
-- whose COMMIT was cut off asks whether it landed: commit_no alone cannot tell
-- its own commit from one another instance made after taking the job over.
ALTER TABLE job_progress ADD COLUMN IF NOT EXISTS committed_by TEXT;
