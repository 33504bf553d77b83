-- Reserved for the step queue's tasks (h-tasks): replaced by that migration when the branches merge.
SELECT 1;
