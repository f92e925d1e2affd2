// The worker registers every workflow exported here.
export { selfCheck } from './self-check';
export { keyEntity } from './key-entity';
export { rotateRootKey } from './rotate-root-key';
export { watchRootKeys } from './watch-root-keys';
export { describeRootKey } from './describe-root-key';
export { createRootKey } from './create-root-key';
export { awaitRewrap } from './await-rewrap';
export { nightlyBackup } from './nightly-backup';
export { restoreBackup } from './restore-backup';
export { listBackups } from './list-backups';
export { rotateBackupKey } from './rotate-backup-key';
export { regenerateDataKey } from './regenerate-data-key';
export { rotateMasterKey } from './rotate-master-key';
export { initDemo } from './init-demo';
export { setRootKeyPolicy } from './set-root-key-policy';
export { verifyBackup } from './verify-backup';
