/// The release this build calls itself; carried in logs and the schema registry.
public let harmonyliteVersion = "0.1.0"
