/** The one task queue every keyops worker polls; scaling out is more workers on it. */
export const TASK_QUEUE = 'keyops';
