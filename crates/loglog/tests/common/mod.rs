//! A real node for the client's tests: an embedded `loglogd::Node` serving
//! TCP on a free port, with real files and real fsync.

use loglogd::{Config, Node};

pub struct TestNode {
    pub node: Node,
    pub addr: String,
    _dir: tempfile::TempDir,
}

pub async fn start_node(configure: impl FnOnce(&mut Config)) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path().join("data"));
    config.listen = Some("127.0.0.1:0".parse().unwrap());
    configure(&mut config);
    let node = Node::start(config).await.unwrap();
    let addr = node.local_addr().unwrap().to_string();
    TestNode {
        node,
        addr,
        _dir: dir,
    }
}
