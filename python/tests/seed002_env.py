import os
from lambda_cloud import LambdaCloudClient

# Get API key from environment variable
api_key = os.environ.get("LAMBDA_API_KEY")

if not api_key:
    raise ValueError("LAMBDA_API_KEY environment variable is not set")

# Initialize client with the API key
client = LambdaCloudClient(api_key=api_key)

# Now you can use the client
