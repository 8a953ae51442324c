//! Image input and output (.npy, PNG): in progress.
