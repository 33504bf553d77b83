-- Reserved for multipart uploads and models (h-multipart): replaced by that migration when the branches merge.
SELECT 1;
