from lambda_cloud import LambdaCloudClient

# Initialize with your API key
client = LambdaCloudClient(api_key="your-api-key")

# Now all operations will be authenticated automatically
