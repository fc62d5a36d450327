//! The local provider as a plugin: `libmayfly_provider_local_plugin.so`, loaded
//! by `[provider] path = ".../libmayfly_provider_local_plugin.so"` through the same C
//! ABI as any third-party provider. The `mayfly` binary also links the same
//! provider in, as its embedded default (`[provider] name = "local"`). Like any
//! plugin it imports the provider API (and the provider it exports) only.

mayfly_provider_api::export_provider!(mayfly_provider_local::LocalProvider);
