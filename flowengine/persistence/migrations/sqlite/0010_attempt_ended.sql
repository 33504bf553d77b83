-- When an attempt ended, so that a run's timeline can draw every attempt of a step, not only its last.
ALTER TABLE attempts ADD COLUMN ended REAL;
