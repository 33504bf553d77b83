-- Reserved for the queue and agents (h-queue): replaced by that migration when the branches merge.
SELECT 1;
