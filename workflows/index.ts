// The worker registers every workflow exported here.
export { selfCheck } from './self-check';
