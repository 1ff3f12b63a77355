// `import SyncBN`: the library a Swift program uses to define a network from SyncBN's layer types and
// train it in one process (`LocalStepRunner`), as a coordinator (`Coordinator`) or as a worker (`Worker`).
// It re-exports the math core and the cluster layer; see README.md, "The Swift library".
@_exported import SyncBNCluster
@_exported import SyncBNCore
